"""The rule engine: the plan's thresholds and the national standards behind them."""
