  resubmitted=1  # preemption.mode=resubmit: the successor takes over (this job ends not OK)
