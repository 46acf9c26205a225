"""The speech recognition recipe: corpora, tokenizer, features, Conformer-CTC, quantization-aware training,
decoding and scoring, the model on simulated crossbars (memsim), reports, and the pipeline that runs them."""
