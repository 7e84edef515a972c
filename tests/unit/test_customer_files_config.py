"""customer_files settings: every bad value fails at load with one line naming the key."""

from __future__ import annotations

import copy

import pytest
import yaml

from base.errors import ConfigError
from config.settings import DEFAULT_CONFIG, load_settings

GOOD = {
    "customer_files": {
        "source_dirs": ["/srv/incoming"],
        "customers": {
            "acme": {"primary": "/backup/acme", "secondary": "sftp://backup@edge2:22/backup/acme"},
            "Zoë GmbH": {"primary": "hdfs://nn:9870/backup/zoe", "secondary": "webhdfs://nn2/backup/zoe"},
        },
        "domains": {"traffic": ["*traffic*.csv", "[!x]*.txt", "[]]*.csv"], "tolling": ["TOLL_[0-9]*.dat"]},
        "staging_table": "mnaas.cf_inter",
        "final_table": "mnaas.cf_count",
        "status_flag": "/srv/status/backup.status",
    }
}


def _load(tmp_path, change=None):
    data = copy.deepcopy(GOOD)
    if change:
        change(data["customer_files"])
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_settings(path)


def test_good_section_and_defaults(tmp_path):
    cfg = _load(tmp_path).customer_files
    assert list(cfg.customers) == ["acme", "Zoë GmbH"]
    assert (cfg.after_backup, cfg.max_files_per_run, cfg.settle_seconds) == ("keep", 500, 60)


def test_shipped_default_config_has_the_section():
    cfg = load_settings(DEFAULT_CONFIG).customer_files
    assert {"traffic", "activations", "actives", "tolling"} <= set(cfg.domains)
    for where in cfg.customers.values():
        # As seed 002: the primary in HDFS (the local platform's NameNode, WebHDFS on its HTTP port, as the HDFS
        # user owning /backup), the secondary on the edge node (the local platform's sshd).
        assert where.primary.startswith("hdfs://mediation@127.0.0.1:9870/backup/customers/")
        assert where.secondary.startswith("sftp://127.0.0.1:2222/")
    assert cfg.status_flag.startswith("hdfs://mediation@127.0.0.1:9870/backup/customers/")


def test_section_is_optional(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("{}")
    assert load_settings(path).customer_files is None


def _customer(name):
    return lambda c: c["customers"].update({name: {"primary": "/b/x", "secondary": "/c/x"}})


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(colour="blue"), "customer_files.colour: unknown key"),
    (lambda c: c["customers"]["acme"].update(tertiary="/x"), "customer_files.customers.acme.tertiary: unknown key"),
    (lambda c: c["domains"].update(bad=["traffic_[0-9.csv"]),
     "domains.bad: glob 'traffic_[0-9.csv' has an unclosed '['"),
    (lambda c: c["domains"].update(bad=["sub/*.csv"]), "domains.bad: glob 'sub/*.csv' contains '/'"),
    (lambda c: c["domains"].update(bad=["x]*.csv"]), "has a ']' without '['"),
    (lambda c: c["domains"].update(bad=[""]), "domains.bad: glob '' is empty"),
    (lambda c: c["domains"].update(bad=[]), "domains.bad: needs at least one glob pattern"),
    (_customer("../x"), "customers: customer name '../x' contains '..'"),
    (_customer("a/b"), "customer name 'a/b' contains a slash"),
    (_customer(".hidden"), "customer name '.hidden' starts with a dot"),
    (_customer("tab\there"), "contains control characters"),
    (_customer(" "), "is empty"),
    (lambda c: c["domains"].update({"../d": ["*"]}), "domains: domain name '../d' contains '..'"),
    (lambda c: c.pop("final_table"), "customer_files.final_table: Field required"),
    (lambda c: c.pop("staging_table"), "customer_files.staging_table: Field required"),
    (lambda c: c.update(final_table="counts"), "final_table: invalid table name 'counts'"),
    (lambda c: c.update(final_table="db.x; DROP TABLE y"), "final_table: invalid table name"),
    (lambda c: c.update(final_table="mnaas.cf_inter"), "staging_table and final_table must differ"),
    (lambda c: c["customers"]["acme"].update(primary="s3://bucket/acme"),
     "customers.acme.primary: location 's3://bucket/acme' unknown scheme 's3'"),
    (lambda c: c["customers"]["acme"].update(secondary="sftp:///no/host"),
     "customers.acme.secondary: location 'sftp:///no/host' names no host"),
    (lambda c: c["customers"]["acme"].update(secondary="sftp://edge2:99999/x"), "has a bad port"),
    (lambda c: c["customers"]["acme"].update(secondary="/backup/acme/"), "is already used by customers.acme.primary"),
    (lambda c: c["customers"]["acme"].update(primary="/backup/a%0Ab"), "contains control characters"),
    (lambda c: c.update(source_dirs=[]), "customer_files.source_dirs"),
    (lambda c: c.update(customers={}), "customer_files.customers"),
    (lambda c: c.update(after_backup="move"), "move_to: required when after_backup is 'move'"),
    (lambda c: c.update(after_backup="shred"), "customer_files.after_backup"),
    (lambda c: c.update(max_files_per_run=0), "customer_files.max_files_per_run"),
    (lambda c: c.update(settle_seconds=-1), "customer_files.settle_seconds"),
])
def test_bad_values_name_the_key(tmp_path, change, message):
    with pytest.raises(ConfigError) as ei:
        _load(tmp_path, change)
    assert message in str(ei.value)
    assert "\n" not in ei.value.one_line()


def test_storage_options_per_scheme(tmp_path):
    from storage.locations import storage_options

    s = _load(tmp_path)
    assert storage_options(s, "/backup/acme") == {} and storage_options(s, "webhdfs://nn/x") == {}
    sftp = storage_options(s, "sftp://edge2/backup")
    assert sftp["known_hosts"] == str(s.path(s.sftp.known_hosts)) and sftp["key_file"] == str(s.path(s.sftp.key_file))
    kerberos = _load(tmp_path, lambda c: c.update(hdfs_kerberos=True))
    assert storage_options(kerberos, "hdfs://nn:9870/x") == {"kerberos": True}


def test_the_secondary_is_optional_and_a_customer_has_the_roles_it_configures(tmp_path):
    cfg = _load(tmp_path, lambda c: c["customers"]["acme"].pop("secondary")).customer_files
    assert cfg.customers["acme"].secondary is None
    assert cfg.customers["acme"].roles() == ("primary",)
    assert cfg.customers["Zoë GmbH"].roles() == ("primary", "secondary")


def test_count_load_needs_both_settings_and_a_plain_server_path(tmp_path):
    both = _load(tmp_path, lambda c: c.update(count_load_folder="hdfs://nn:9870/counts",
                                                count_load_server_path="hdfs:///counts")).customer_files
    assert (both.count_load_folder, both.count_load_server_path) == ("hdfs://nn:9870/counts", "hdfs:///counts")
    with pytest.raises(ConfigError, match="count_load_folder and count_load_server_path: set both"):
        _load(tmp_path, lambda c: c.update(count_load_folder="hdfs://nn:9870/counts"))
    for bad in ("hdfs:///counts' OR 1=1", "relative/counts", "/counts with space", "/counts\\x"):
        with pytest.raises(ConfigError, match="count_load_server_path: .* is not an absolute path"):
            _load(tmp_path, lambda c, bad=bad: c.update(count_load_folder="/srv/counts", count_load_server_path=bad))


def test_a_file_belongs_to_the_first_domain_whose_glob_matches_it_as_fnmatchcase_reads_it(tmp_path):
    """``domain_of`` compiles each domain's globs once; it must keep fnmatchcase's meaning for every name."""
    import fnmatch

    from backup.customer_files import domain_of

    def change(section):
        section["domains"] = {"traffic": ["*traffic*.csv", "[!x]*.txt", "[]]*.csv", "a?c.(1)+.csv"],
                              "tolling": ["TOLL_[0-9]*.dat", "*.csv"], "other": ["*"]}
    cfg = _load(tmp_path, change).customer_files
    names = ["traffic.csv", "my_traffic_2.csv", "x.txt", "y.txt", "].csv", "abc.(1)+.csv", "abc.(1).csv",
             "TOLL_7.dat", "toll_7.dat", "TOLL_x.dat", "plain.csv", "TRAFFIC.csv", "traffic.csv\n", "a\nb.txt", ""]

    def by_fnmatch(name):
        return next((domain for domain, globs in cfg.domains.items()
                     if any(fnmatch.fnmatchcase(name, glob) for glob in globs)), None)
    assert [domain_of(cfg, n) for n in names] == [by_fnmatch(n) for n in names]
    assert [domain_of(cfg, n) for n in ("y.txt", "abc.(1)+.csv", "abc.(1).csv", "TRAFFIC.csv", "traffic.csv\n")] \
        == ["traffic", "traffic", "tolling", "tolling", "other"]
    # The settings refuse a domain without a glob; were one to get through, it would match nothing, not all.
    from config.settings import CustomerFilesSettings
    unchecked = CustomerFilesSettings.model_construct(domains={"none": [], "t": ["t*"]})
    assert [domain for domain, matches in unchecked.domain_matchers if matches("t1")] == ["t"]
