"""UrbanPulse shared core: settings, message contract, storage schema and the command line."""

__version__ = "0.1.0"
