"""Multi-turn rollouts, their typed records, and the composite reward."""

from redgym.rollout.engine import generate_turns, rollout, rollout_batch
from redgym.rollout.records import Conversation, Turn
from redgym.rollout.reward import RewardWeights, composite_reward, score_conversations, score_exchanges

__all__ = [
    "generate_turns",
    "rollout",
    "rollout_batch",
    "Conversation",
    "Turn",
    "RewardWeights",
    "composite_reward",
    "score_conversations",
    "score_exchanges",
]
