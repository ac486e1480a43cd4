"""Applications on top of the library: the CLI, the demos' comparison harness, experiment
runners, parallel jobs and plots. Imports everything; nothing in the library imports it."""
