"""``hpc-sbatch [sbatch options] script.sh [args]``: sbatch with the framework's preamble.

Every sbatch option passes through unchanged. The submitted script is a wrapper:
the framework's defaults (as ``#SBATCH`` lines before the user's own, so the
user's win), the user's ``#SBATCH`` lines, a preamble (rendezvous variables,
preemption signal forwarding), then the original script, byte for byte, run
with its own interpreter and arguments. ``--dry-run`` prints the wrapper.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
import time
from pathlib import Path

from hpc.launchers.slurm import render
from hpc.quoting import shell_join, shell_word

# sbatch options that take a separate value (`-p debug`, `--partition debug`).
SHORT_WITH_VALUE = set("AaBbcDdeFGiJLMmNnopqSTtwx")
LONG_WITH_VALUE = {
    "account",
    "acctg-freq",
    "array",
    "batch",
    "bb",
    "bbf",
    "begin",
    "chdir",
    "cluster-constraint",
    "clusters",
    "comment",
    "constraint",
    "container",
    "core-spec",
    "cores-per-socket",
    "cpu-freq",
    "cpus-per-gpu",
    "cpus-per-task",
    "deadline",
    "delay-boot",
    "dependency",
    "distribution",
    "error",
    "exclude",
    "export",
    "export-file",
    "extra-node-info",
    "get-user-env",
    "gid",
    "gpu-bind",
    "gpu-freq",
    "gpus",
    "gpus-per-node",
    "gpus-per-socket",
    "gpus-per-task",
    "gres",
    "gres-flags",
    "hint",
    "input",
    "job-name",
    "licenses",
    "mail-type",
    "mail-user",
    "mcs-label",
    "mem",
    "mem-bind",
    "mem-per-cpu",
    "mem-per-gpu",
    "mincpus",
    "network",
    "nice",
    "nodefile",
    "nodelist",
    "nodes",
    "ntasks",
    "ntasks-per-core",
    "ntasks-per-gpu",
    "ntasks-per-node",
    "ntasks-per-socket",
    "open-mode",
    "output",
    "partition",
    "power",
    "prefer",
    "priority",
    "profile",
    "propagate",
    "qos",
    "reservation",
    "signal",
    "sockets-per-node",
    "switches",
    "thread-spec",
    "threads-per-core",
    "time",
    "time-min",
    "tmp",
    "uid",
    "wait-all-nodes",
    "wckey",
    "wrap",
}
# Pyxis's srun options (SPANK). Given to hpc-sbatch they go to every srun of the script,
# not to sbatch: the batch shell (this wrapper) stays on the host, where it forwards the
# preemption signal and has scontrol (Pyxis would run the whole batch script inside).
PYXIS_WITH_VALUE = {
    "container-image",
    "container-mounts",
    "container-workdir",
    "container-name",
    "container-save",
    "container-env",
}
PYXIS_FLAGS = {
    "container-mount-home",
    "no-container-mount-home",
    "container-remap-root",
    "no-container-remap-root",
    "container-entrypoint",
    "no-container-entrypoint",
    "container-writable",
    "container-readonly",
}
DEFAULT_DIRECTIVES = [f"--signal={render.signal_value()}", "--requeue", "--open-mode=append"]


class UsageError(ValueError):
    pass


def split_args(argv: list[str]) -> tuple[list[str], str | None, list[str], bool]:
    """(sbatch options, script path or None for --wrap, script args, dry_run)."""
    options: list[str] = []
    dry_run = False
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--dry-run":
            dry_run = True
        elif arg == "--":
            i += 1
            break
        elif arg.startswith("--"):
            name = arg[2:].split("=", 1)[0]
            options.append(arg)
            if "=" not in arg and name in PYXIS_WITH_VALUE:  # kept as one word: --name=value
                if i + 1 >= len(argv):
                    raise UsageError(f"option {shell_word(arg)} needs a value")
                options[-1] = f"{arg}={argv[i + 1]}"
                i += 1
            elif "=" not in arg and name in LONG_WITH_VALUE:
                if i + 1 >= len(argv):
                    raise UsageError(f"option {shell_word(arg)} needs a value")
                options.append(argv[i + 1])
                i += 1
        elif arg.startswith("-") and len(arg) > 1:
            options.append(arg)
            if len(arg) == 2 and arg[1] in SHORT_WITH_VALUE:
                if i + 1 >= len(argv):
                    raise UsageError(f"option {shell_word(arg)} needs a value")
                options.append(argv[i + 1])
                i += 1
        else:
            break
        i += 1
    rest = argv[i:]
    wraps = [o for o in options if o.startswith("--wrap")]
    if wraps:
        return options, None, rest, dry_run
    if not rest:
        raise UsageError("no batch script given (usage: hpc-sbatch [options] script [args])")
    return options, rest[0], rest[1:], dry_run


def is_pyxis(option: str) -> bool:
    name = option[2:].split("=", 1)[0] if option.startswith("--") else ""
    return name in PYXIS_WITH_VALUE or name in PYXIS_FLAGS


def srun_shim(options: list[str]) -> list[str]:
    """Wrapper lines that put the Pyxis options on every ``srun`` of the script: an
    ``srun`` first on PATH that adds them, unless that call names container options."""
    if not options:
        return []
    return [
        "# Pyxis options given to hpc-sbatch go to every srun of the script (an srun that",
        "# names container options of its own keeps them); this shell stays on the host.",
        'HPC_SBATCH_SRUN="$(command -v srun)"; export HPC_SBATCH_SRUN',
        'mkdir -p "$original.bin" && cat > "$original.bin/srun" <<\'HPC_SBATCH_SRUN\'',
        "#!/bin/bash",
        'for a in "$@"; do case $a in --container-*|--no-container-*)',
        '  exec "$HPC_SBATCH_SRUN" "$@";; esac; done',
        f'exec "$HPC_SBATCH_SRUN" {shell_join(options)} "$@"',
        "HPC_SBATCH_SRUN",
        'chmod +x "$original.bin/srun"; export PATH="$original.bin:$PATH"',
    ]


def sbatch_lines(script: bytes) -> list[bytes]:
    """The ``#SBATCH`` lines sbatch itself reads, as it reads them.

    sbatch splits at ``\\n`` only, takes lines that start with ``#SBATCH`` at the
    first column, skips blank and other comment lines, and stops at the first
    line that is neither.
    """
    lines = []
    for line in script.split(b"\n"):
        if line.startswith(b"#SBATCH"):
            lines.append(line)
            continue
        stripped = line.lstrip()
        if stripped and not stripped.startswith(b"#"):
            break
    return lines


def check_script(original: bytes) -> None:
    """UsageError for what sbatch would refuse (its own checks, before anything is written)."""
    if b"\0" in original:
        raise UsageError("holds a NUL byte, which Slurm does not accept in a batch script")
    if b"\r\n" in original:
        raise UsageError("has DOS line breaks (\\r\\n), which sbatch refuses; convert it first")


def wrap(
    original: bytes, args: list[str], origin: str, srun_options: list[str] | None = None
) -> bytes:
    """The wrapper script; ``original`` is embedded and re-created byte for byte;
    ``srun_options`` (Pyxis's) go to every srun it runs."""
    delimiter = f"HPC_SBATCH_ORIGINAL_{secrets.token_hex(8)}"
    while delimiter.encode() in original:
        delimiter = f"HPC_SBATCH_ORIGINAL_{secrets.token_hex(8)}"
    command = " ".join(
        part
        for part in (
            "setsid",
            "" if original.startswith(b"#!") else "/bin/bash",
            '"$original"',
            shell_join(args),
        )
        if part
    )
    # The template is text; the user's lines and script are bytes (any encoding), so
    # they go in at two markers that no template holds (NUL).
    marks = ("\0user\0", "\0original\0")
    text = render.render(
        "sbatch-wrapper.sh",
        origin=shell_word(origin),
        directives=render.sbatch_block(DEFAULT_DIRECTIVES),
        user_directives=marks[0],
        master_port=render.MASTER_PORT,
        delimiter=delimiter,
        original=marks[1],
        truncate=render.block(
            []
            if original.endswith(b"\n")
            else ['truncate -s -1 "$original"  # the original has no final newline']
        ),
        signal=render.SIGNAL,
        command=command,
        srun=render.block(srun_shim(list(srun_options or []))),
    )
    head, rest = text.split(marks[0])
    middle, tail = rest.split(marks[1])
    user = b"".join(line + b"\n" for line in sbatch_lines(original))
    body = original if original.endswith(b"\n") else original + b"\n"
    return head.encode() + user + middle.encode() + body + tail.encode()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        options, script_path, script_args, dry_run = split_args(args)
    except UsageError as exc:
        print(f"hpc-sbatch: error: {exc}", file=sys.stderr)
        return 2
    if script_path is None:
        wrap_value = next(
            (o.split("=", 1)[1] if "=" in o else options[options.index(o) + 1])
            for o in options
            if o.startswith("--wrap")
        )
        index = next(i for i, o in enumerate(options) if o.startswith("--wrap"))
        del options[index : index + (1 if "=" in options[index] else 2)]
        original, origin = b"#!/bin/sh\n" + os.fsencode(wrap_value) + b"\n", "--wrap"
    else:
        origin = script_path
        try:
            original = Path(script_path).read_bytes()
            check_script(original)
        except OSError as exc:
            print(f"hpc-sbatch: error: {shell_word(origin)}: {exc.strerror}", file=sys.stderr)
            return 2
        except UsageError as exc:
            print(f"hpc-sbatch: error: {shell_word(origin)}: {exc}", file=sys.stderr)
            return 2
    pyxis = [o for o in options if is_pyxis(o)]
    options = [o for o in options if not is_pyxis(o)]
    text = wrap(original, script_args, origin, pyxis)
    if dry_run:
        sys.stdout.buffer.write(text)
        return 0
    # lazy: submit only; --dry-run stays ~25 ms
    from hpc.launchers.slurm import client  # noqa: PLC0415
    from hpc.rundir.records import state_dir, write_atomic  # noqa: PLC0415

    spool = state_dir() / "sbatch"
    spool.mkdir(parents=True, exist_ok=True)
    name = re.sub(r"[^\w.-]", "_", Path(origin).name)
    wrapper = spool / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{name}"
    write_atomic(wrapper, text)
    try:
        job_id = client.submit(str(wrapper), options)
    except client.SlurmError as exc:
        print(f"sbatch: error: {exc}", file=sys.stderr)
        return 1
    print(job_id if "--parsable" in options else f"Submitted batch job {job_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
