// dashcheck: validates the chart's Grafana dashboard against Grafana's dashboard schema (the
// types the Grafana Foundation SDK, Apache-2.0, generates from it). Built by
// tools/build-go-tools.
module ce-collm/tools/dashcheck

go 1.24.0

require github.com/grafana/grafana-foundation-sdk/go v0.0.22
