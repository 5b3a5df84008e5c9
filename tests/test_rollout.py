import torch

from redgym.models import SamplingParams
from redgym.rollout import rollout


class CountingLM:
    """Wraps an LM and counts generate calls and batch sizes."""

    def __init__(self, lm):
        self.lm, self.calls = lm, []

    def render(self, history, me):
        return self.lm.render(history, me)

    def generate(self, contexts, params):
        self.calls.append(len(contexts))
        return self.lm.generate(contexts, params)


def test_rollout_alternates_turns_with_one_generate_call_per_role_per_turn(tiny_lm):
    torch.manual_seed(0)
    adv, dfd = CountingLM(tiny_lm), CountingLM(tiny_lm)
    prompts = [(f"p{i}", ("hello there", "how are you")) for i in range(5)]
    convs = rollout(prompts, adv, dfd, horizon=3, params=SamplingParams(max_new_tokens=4), batch_size=4, progress=False)
    # 5 conversations in batches of 4 and 1; 3 turns each -> 3 calls per batch per role
    assert adv.calls == [4, 4, 4, 1, 1, 1] and dfd.calls == adv.calls
    assert [c.prompt_id for c in convs] == [p for p, _ in prompts]
    for c in convs:
        assert [t.speaker for t in c.turns] == ["adversary", "defender"] * 3
        assert all(1 <= len(t.token_ids) <= 4 and len(t.logprobs) == len(t.token_ids) for t in c.turns)
        assert c.history()[:2] == [("prompt", "hello there"), ("prompt", "how are you")]
        assert len(c.exchanges()) == 3


def test_defender_sees_the_adversary_turn(tiny_lm):
    seen = []

    class Spy(CountingLM):
        def generate(self, contexts, params):
            seen.extend(contexts)
            return super().generate(contexts, params)

    torch.manual_seed(0)
    convs = rollout(
        [("p", ("hi",))], tiny_lm, Spy(tiny_lm), horizon=1, params=SamplingParams(max_new_tokens=3), progress=False
    )
    assert seen == [f"hi\n{convs[0].turns[0].text}\n"]
