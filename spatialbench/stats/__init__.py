"""Numbers from predictions: metrics and clustered bootstrap CIs, paired tests, control targets, MDL codelength."""
