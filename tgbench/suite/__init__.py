"""The suite: what a suite YAML file is and how it is read, one module per job, lowest first.

* :mod:`tgbench.suite.schema` — the pydantic models (no registry: what the engine and the hashes read);
* :mod:`tgbench.suite.names` — profiles, installed suites, what a suite argument means;
* :mod:`tgbench.suite.yaml_text` — the YAML rules (no duplicate key, size cap);
* :mod:`tgbench.suite.messages` — a ``ValidationError`` as one ``ConfigError`` line;
* :mod:`tgbench.suite.by_kind` — a suite's model by its registered kind (the suite-kind registry);
* :mod:`tgbench.suite.checks` — checks against the method, dataset and kind registries;
* :mod:`tgbench.suite.overrides` — ``--set KEY=VALUE``;
* :mod:`tgbench.suite.loading` — ``load_suite``: file, ``include:``, profiles, overrides, checks.

Nothing is re-exported here, so that importing the schema does not import the registries (a package's
``__init__`` runs before any of its modules); ``tgbench.config`` re-exports the public names for plug-ins.
"""
