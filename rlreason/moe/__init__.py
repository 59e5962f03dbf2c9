"""MoE: router regularisers, routing replay, router metrics, upcycling (not built yet; see the MoE issue)."""
