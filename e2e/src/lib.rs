//! The e2e harness: a cluster (KUBECONFIG or a local control plane), the Helm chart, the operator
//! running as the chart's ServiceAccount, and a real Redis.
