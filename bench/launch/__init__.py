"""How worker processes are started: one interface (bench.launch.launcher.Launcher) over
spawning, forking from a fork server and Ray tasks; the isolation around every worker
(its watchdog, limits and record) and the pooling of a case's several processes."""
