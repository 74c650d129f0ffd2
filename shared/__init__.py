"""What every part shares: device configs, capture files, log lines, broker URLs and command-line
helpers. It sits below every part (docs/architecture.md): the Linux agent, the firmware tooling
and the hub all import it, and it imports nothing of ours but the agent core."""
