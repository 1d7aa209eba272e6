"""Mixture search: predict the best mixture of a run's sources from small proxy runs (olmix, RegMix, DoReMi).

`swarm`: olmix's draws of the proxies' mixtures; `law`: olmix's log-linear mixing law and its fit; `regmix`: RegMix's
LightGBM law, its fit and its proposal; `propose`: olmix's exact proposal for the log-linear law; `ternary`: a mixture
of three sources drawn; `table`: a table of proxies (one row each: its source weights and its targets) read from CSV;
`targets`: what `mix table` measures of each trained proxy (a task's loss, a logged metric, an eval result);
`doremi`: DoReMi's online domain-weight update and its reweighted loss (not yet wired into the trainer).
The `instructjax mix` commands (cli/mix.py) put them together.
"""
