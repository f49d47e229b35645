"""Infrastructure: the local stack (``infra.local``) and Kubernetes manifests (``infra/k8s``)."""
