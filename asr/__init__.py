"""Speech recognition recipe: data preparation, tokenizer, features, and (to come) models and decoding."""
