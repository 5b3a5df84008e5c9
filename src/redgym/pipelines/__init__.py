"""Multi-step jobs built on the trainers and evaluation: Explore -> Establish -> Exploit (E3)."""
