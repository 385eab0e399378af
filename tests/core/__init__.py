"""Tests of the pure-torch selection core (vllm_vtprune.core)."""
