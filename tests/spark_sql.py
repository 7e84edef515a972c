"""Run SQL in a classic Spark driver started with spark-submit, as an operator's spark-sql would: setup and read-back.

    spark-submit ... tests/spark_sql.py STATEMENTS.json ROWS.json

Runs the statements in order and writes the rows of each as JSON lists (dates as text): one driver
start (10 s or more) for all of them.
"""

import json
import sys

from pyspark.sql import SparkSession

statements_path, rows_path = sys.argv[1], sys.argv[2]
spark = SparkSession.builder.enableHiveSupport().getOrCreate()
results = [[list(r) for r in spark.sql(statement).collect()] for statement in json.loads(open(statements_path).read())]
with open(rows_path, "w") as out:
    json.dump(results, out, default=str)
spark.stop()
