"""The neutral bottom layer every other part uses: errors, the run config, sharding rules + mesh, the checkpoint format."""
