"""The rollout loop's core: policy, gates and the step/promote/rollback state machine.

Pure functions over plain data: the loop that reads metrics, calls `decide` and applies the result
to an InferenceService and the MLflow aliases builds on these (issue C).
"""
