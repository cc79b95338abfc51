"""HTTP routes: policy that calls the layers below (auth flow, proxying, health)."""
