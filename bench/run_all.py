"""Run every benchmark in turn; each prints one JSON line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

for script in ("transfer.py", "bandwidth.py", "export.py", "customer_files.py", "table_backup.py", "hdfs_copies.py",
               "count_table_growth.py", "small_file_floor.py"):
    if (HERE / script).exists():
        subprocess.run([sys.executable, str(HERE / script), *sys.argv[1:]], check=False, cwd=HERE)
