"""Generated video sets in UCF101's raw layout: the data of the demo, the fidelity benchmark, the
tests and the benches, made without downloads. Not the preparation tool (data_prep/), which turns
these, like any raw videos, into training data.

  synthetic   moving textured squares: motion kinds, speeds (the demo's set) or surface patterns
              (the RGB view's learned-vs-random check); shared writers (AVI, split lists)
  motion_set  the fidelity benchmark's family of sets: kinds of motion with per-video nuisances
"""
