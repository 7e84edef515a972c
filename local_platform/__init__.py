"""The embedded local platform: development and test tooling, not the production app.

Everything ``make demo``, the tests and the benchmarks need on one machine, started and stopped by
``backupctl platform up|down|status`` under ``.platform/``: Redis, the Derby metastore, the HDFS and
YARN mini clusters (``hadoop``, launched from the Java sources in ``java/``), one Spark JVM serving
Spark Connect and HiveServer2, an OpenSSH sshd as the edge node, and the mail and ticket sinks
(``sinks``); plus the demo's inputs and summary (``demo``) and the sample tables (``sample_data``).

It may import ``base``, ``config``, ``connectors``, ``storage`` and ``backup``; production code never
imports it (the ``backupctl`` CLI only inside its ``platform``, ``sample-data`` and ``demo`` commands).
"""
