"""The demos: a paired comparison of four training methods on one task.

:mod:`.harness` trains and evaluates every method (:mod:`.methods`) on every seed in a demo
folder (:mod:`.demo_folder`); :mod:`.paired_summary` tests and tabulates the differences;
each task's report (the interface :mod:`.task_report`, with :mod:`.arithmetic_report` and
:mod:`.text_report`) says what is measured and how it is shown (plots: :mod:`.plotting`);
:mod:`.arithmetic_demo` and :mod:`.text_demo` hold each demo's sizes.
"""
