"""Automatic parameter search: profiles, a cost model, and a two-stage search for nano-batches, order and SM shares.

Stage one (stage_one.py) picks nano-batch counts per op class and each stream's order from interference-free costs;
stage two (stage_two.py) picks SM shares per stream with a MILP over the pipelined layer time, with interference.
search.py drives both per token bucket and keeps plans in the profile database (profile_db.py).
"""
