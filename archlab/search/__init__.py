"""The search: a run's driver and the pipeline every candidate goes through.

    config -> select (sampling.py) -> propose (archlab/agents) -> check and evaluate (archlab/sandbox)
           -> analyse (archlab/agents) -> store (archlab/tree)

driver.py keeps the slots busy within the budgets and recovers after a crash; pipeline.py is the
langgraph graph one candidate runs; evaluation.py asks the sandbox (through an executor) and
records what it says; promotion.py re-evaluates the best at a higher tier; fitness.py is the
objective every node is ranked by.
"""
