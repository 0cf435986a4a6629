"""`sage-opd view`: a round's trajectories as one self-contained HTML page (data -> page)."""
