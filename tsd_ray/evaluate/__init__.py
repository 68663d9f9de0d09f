"""Layer 3, evaluation: predicting a split with a trained student and scoring it; reports
(Table 1-3, per-class tables) written as Markdown and JSON. Imports the layers below."""
