"""The operator itself: the reconcile (controller), the kopf handlers, metrics and the entry
point. Carries decisions out through the clients."""
