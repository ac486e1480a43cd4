"""Applications on top of the library: the CLI, a run's setup from its configuration,
parallel jobs, and the demos (:mod:`.demos`: the comparison harness, its reports and plots).
Imports everything; nothing in the library imports it."""
