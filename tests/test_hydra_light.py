"""The lazy ``hydra`` package of the command-line front ends (hpc.spec.hydra_light)
gives every public name as the same object the real package does, and a dry run
never runs Hydra's package __init__ (hydra.utils, hydra.compose stay unloaded)."""

from __future__ import annotations

import json
import subprocess
import sys

from hpc.spec import hydra_light

NAMES = """
import json, sys
lazy = sys.argv[1] == "lazy"
if lazy:
    from hpc.spec import hydra_light
    assert hydra_light.install()
import hydra
from hydra._internal.config_loader_impl import ConfigLoaderImpl  # what composing loads
import hydra.compose, hydra.initialize, hydra.main  # the submodules named like functions
from hydra import compose, main
assert callable(compose) and callable(main)
assert hydra_light.is_lazy(hydra) if lazy else True
out = {name: getattr(getattr(hydra, name), "__qualname__", getattr(hydra, name).__name__)
       for name in hydra.__all__ if name != "__version__"}
out["__version__"] = hydra.__version__
print(json.dumps(out, sort_keys=True))
"""

DRY_RUN = """
import sys
from hpc.cli.launch import main
assert main(["dry_run=true"]) == 0
heavy = ("torch", "mlflow", "numpy", "pandas", "jinja2", "pydantic", "importlib.metadata",
         "hydra.utils", "hydra.compose", "hydra._internal.hydra", "requests")
print("loaded:", *[m for m in heavy if m in sys.modules])
"""


def _run(code: str, *args: str, cwd: str | None = None) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=cwd
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_same_public_names_as_the_real_package():
    real, lazy = json.loads(_run(NAMES, "real")), json.loads(_run(NAMES, "lazy"))
    assert lazy == real
    assert {"compose", "main", "initialize", "utils", "MissingConfigException"} <= real.keys()


def test_a_dry_run_imports_nothing_heavy(tmp_path):
    out = _run(DRY_RUN, cwd=str(tmp_path))
    assert out.startswith("# hpc-launch plan")
    assert out.splitlines()[-1] == "loaded:"


def test_an_unexpected_package_init_is_imported_as_usual():
    usual = '__version__ = "1.3.8"\nfrom hydra import utils\n__all__ = ["utils"]\n'
    assert hydra_light._parse(usual) == ("1.3.8", {"utils": ("hydra.utils", None)}, ["utils"])
    assert hydra_light._parse(usual.replace("from hydra import utils", "setup()")) is None
    assert hydra_light._parse(usual.replace('["utils"]', '["other"]')) is None
    assert hydra_light._parse(usual + "x = 1\n") is None


DEFERRED = """
import io, contextlib
from hpc.cli.launch import main
with contextlib.redirect_stdout(io.StringIO()):
    assert main(["dry_run=true"]) == 0
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
cs = ConfigStore.instance()
assert "config.yaml" not in cs.repo.get("hydra", {}), "hydra/config stored by a dry run"
import hydra.{module}
node = cs.repo["hydra"]["config.yaml"]
from hydra.conf import HydraConf
assert node.provider == "hydra" and node.node == OmegaConf.structured(HydraConf())
print("stored")
"""


def test_hydra_config_is_stored_on_first_use_of_the_public_api(tmp_path):
    for module in ("initialize", "compose", "main", "utils"):
        assert _run(DEFERRED.replace("{module}", module), cwd=str(tmp_path)) == "stored\n"
