"""One way to get a SparkSession: local[*] by default, any cluster by master URL.

Local mode binds the driver to 127.0.0.1 (no reason to listen on the network, and no
"hostname resolves to a loopback address" warning); a cluster master keeps Spark's own
address choice so executors on other hosts can reach the driver. The driver logs through
`log4j2.properties` beside this file: warnings and errors, without a healthy run's chatter.
"""
from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

from wenlv.settings import get_settings

LOG4J_CONFIG = Path(__file__).resolve().with_name("log4j2.properties")
LOOPBACK = "127.0.0.1"
PANDAS3_WARNING = r"PySpark does not yet fully support pandas >= 3\.0\.0"


def is_local(master: str) -> bool:
    """`local`, `local[4]`, `local[*]`, `local-cluster[...]`: everything runs on this machine."""
    return master.startswith("local")


def spark_conf(master: str | None = None) -> dict[str, str]:
    """The configuration `get_spark` applies (before any caller's `conf`), from the settings."""
    settings = get_settings()
    master = master or settings.spark_master
    conf = {
        "spark.master": master,
        "spark.sql.shuffle.partitions": str(settings.shuffle_partitions),
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.memory": settings.spark_driver_memory,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.driver.extraJavaOptions": f"-Dlog4j.configurationFile={LOG4J_CONFIG.as_uri()}",
    }
    if is_local(master):
        conf["spark.driver.host"] = LOOPBACK
        conf["spark.driver.bindAddress"] = LOOPBACK
    return conf


def get_spark(master: str | None = None, app_name: str = "wenlv", conf: dict | None = None):
    """A SparkSession whose Python workers use this interpreter; quiet logs, small shuffles."""
    # pandas 3.1.1 is pinned deliberately and pyspark 4.3 warns on any pandas >= 3. Every
    # Spark path wenlv uses (Arrow conversion, mapInPandas in the feature, carrier and
    # PSI jobs) runs on pandas 3 in tests/test_spark_features.py, test_spark_demo_stage.py
    # and test_spark_cluster.py, so exactly that warning is silenced, nothing else.
    warnings.filterwarnings("ignore", message=PANDAS3_WARNING, category=FutureWarning)
    from pyspark.sql import SparkSession  # lazy: pyspark starts slowly and only Spark commands need it

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    settings_conf = spark_conf(master)
    if is_local(settings_conf["spark.master"]):
        # Spark picks its own address from SPARK_LOCAL_IP before reading the conf above.
        os.environ.setdefault("SPARK_LOCAL_IP", LOOPBACK)
    builder = SparkSession.builder.appName(app_name)
    for key, value in {**settings_conf, **(conf or {})}.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
