"""The static leaderboard: results JSONs -> a page that compares models, plus a validator for submissions.

It only reads results files: nothing here imports the runner or the trainer.
"""
