"""The batch contract between the feature converter (packing.py) and the model's steps.

Batch contract (every feature int32 [batch, length], except the weights float32):

    decoder_input_tokens   ids fed to the model: tokens 0..n-2 of each example
    decoder_target_tokens  ids to predict at each position: tokens 1..n-1 (next token)
    decoder_loss_weights   float32; weight of each target: 1 on all tokens in pre-training,
                           on assistant messages (and their end marker) only in dialogues
    decoder_segment_ids    1, 2, ... per example packed into the row; 0 = padding
    decoder_positions      position within its example, from 0 (RoPE positions)

Attention must stay within equal non-zero segment ids (causal inside a segment), so packed
examples never see each other. Padding has segment id 0, input/target 0 and weight 0.

This module imports nothing, so the train and eval steps can name the features without
pulling TensorFlow in.
"""

INPUTS, TARGETS, WEIGHTS = "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights"
SEGMENTS, POSITIONS = "decoder_segment_ids", "decoder_positions"
MODEL_FEATURES = (INPUTS, TARGETS, WEIGHTS, SEGMENTS, POSITIONS)
