# One image for every service of docker-compose.yml: the tokencache CLI and
# daemon, the example backend and per-user programs, and the fake issuer
# (cmd/fakeissuer, which serves tokencache/issuertest).
#
# The builder's Go is go.mod's go line (internal/cli's TestDockerfile checks
# it). The runtime runs as the numeric user 65532:65532 (distroless's
# "nonroot"): Kubernetes' runAsNonRoot can only verify a numeric user, and
# refuses to start an image whose USER is a name.
FROM golang:1.26.8 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/ ./cmd/tokencache ./cmd/fakeissuer ./examples/backend ./examples/cron ./examples/peruser

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tokencache"]
CMD ["--help"]
