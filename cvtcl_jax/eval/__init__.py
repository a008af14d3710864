"""The evaluation protocols of docs/method.md §6, on any encoder.

sources         where an encoder comes from: a stage's checkpoint, an export, random init
features        backbone features over evaluation batches, sharded, multi-host safe
store           EvalRun: what a protocol's run holds and keeps (dataset, mesh, sources,
                feature cache, result files)
retrieval       R@k, video features, fusion (NumPy)
classifier      the linear head and the finetuning model, their optimisers and step
accuracy        per-video predictions and top-k accuracy
protocols       retrieval, linear probe, finetuning, and PROTOCOLS, the one record of each
                that the modes, the checks and the tables read
pictures        Figure 4's nearest-neighbour pictures
training_check  the retrieval a pretraining stage runs on held-out videos
"""
