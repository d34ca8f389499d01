"""The rule-file language: rules (model.py), records, KPIs, periods, the HJ 633 AQI, how a rule
reads to people (describe.py), and the packaged catalogue, standards and rule unit tests."""
