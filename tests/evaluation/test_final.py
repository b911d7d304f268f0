"""The end-of-run evaluation: its W2 over several fixed draws."""

from __future__ import annotations

from ot_gen.evaluation import final, metrics
from ot_gen.run.build import build


def test_the_final_w2_takes_the_last_validations_draw_and_floor_as_its_first(config, monkeypatch):
    cfg = config("trainer.max_steps=60", "mode.val_every_rounds=30", "callbacks=none")
    module, data, trainer, _ = build(cfg)
    trainer.fit(module, datamodule=data)
    assert module.scored is not None and module.scored[0] == trainer.global_step == 60
    solves, solve = [], metrics.w2
    monkeypatch.setattr(metrics, "w2", lambda x, y: solves.append(len(x)) or solve(x, y))
    reused = final.w2_over_draws(3, module, data, trainer.global_step)
    assert len(solves) == 4, "draws 1 and 2, floors 1 and 2: draw 0 and its floor are validation's"
    scored, module.scored = module.scored, None
    assert final.w2_over_draws(3, module, data, trainer.global_step) == reused, "validation's draw 0 is the final's"
    assert len(solves) == 4 + 6
    # A validation of another state is not this state's first draw; the floor is the same.
    module.scored = (trainer.global_step - 30, scored[1] + 1.0)
    assert final.w2_over_draws(3, module, data, trainer.global_step) == reused
    assert len(solves) == 10 + 5
