"""Input data: the tf.data pipeline (the only TensorFlow user besides data_prep) and TF-free helpers.

  dataset_info   a prepared TFDS dataset's classes, splits and shards, per-host shard assignment
  clip_spec      ClipSpec: clip and LTCL segment geometry                         (no TensorFlow)
  random_batches random uint8 batches of the pipeline's shapes, for benchmarks    (no TensorFlow)
  records        the stored format: the TFDS features of one video, their parser and a writer
  sampling       frame indices (clips, segments, dense evaluation clips)
  augment        per-clip augmentations, flow-aware flips
  device_augment the colour augmentations in JAX, on the accelerators (data.aug.on_device) (no TensorFlow)
  record_stream  parsed records and endless, resumable, deterministic streams of them
  training_clips pretrain_dataset / labelled_clip_dataset: augmented training samples
  eval_clips     eval_dataset: dense evaluation clips; middle_frames for the pictures

Nothing is imported here, so the TF-free modules stay importable on hosts without TensorFlow.
"""
