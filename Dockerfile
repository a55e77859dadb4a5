# One image for every service of docker-compose.yml: the tokencache CLI and
# daemon, the example backend and per-user programs, and the fake issuer
# (cmd/fakeissuer, which serves tokencache/issuertest).
#
# The repository is a Go workspace (go.work): the library's module at the
# root, the commands' in cmd/, the Prometheus adapter's in
# tokencache/tokencacheprom/, the OpenTelemetry adapter's in
# tokencache/tokencacheotel/. The builder's Go is at least every go line
# of them, and the dependency layer copies every module's go.mod and
# go.sum (cmd/internal/cli's TestDockerfile checks both). Each module
# downloads its own requirements: a workspace-wide "go mod download"
# fetches every module of the graph, even test-only ones no build needs.
#
# The runtime runs as the numeric user 65532:65532 (distroless's
# "nonroot"): Kubernetes' runAsNonRoot can only verify a numeric user, and
# refuses to start an image whose USER is a name.
FROM golang:1.26.8 AS build
WORKDIR /src
COPY go.work go.mod go.sum ./
COPY cmd/go.mod cmd/go.sum ./cmd/
COPY tokencache/tokencacheprom/go.mod tokencache/tokencacheprom/go.sum ./tokencache/tokencacheprom/
COPY tokencache/tokencacheotel/go.mod tokencache/tokencacheotel/go.sum ./tokencache/tokencacheotel/
RUN for m in . cmd tokencache/tokencacheprom tokencache/tokencacheotel; do (cd "$m" && GOWORK=off go mod download) || exit 1; done
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/ ./cmd/tokencache ./cmd/fakeissuer ./examples/backend ./examples/cron ./examples/peruser

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tokencache"]
CMD ["--help"]
