"""Storage: connections, migrations, storage policy, and the statements that read and write."""
