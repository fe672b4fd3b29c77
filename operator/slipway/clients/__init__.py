"""The only code that talks to the outside: ``kube`` to the Kubernetes API, ``smoke`` over HTTP
to the model servers."""
