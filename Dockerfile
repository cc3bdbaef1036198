# pgmix node image: `docker build -t pgmix .`
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin pgmix

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/pgmix /usr/local/bin/pgmix
EXPOSE 6432 9187
ENTRYPOINT ["/usr/local/bin/pgmix"]
CMD ["serve", "--config", "/etc/pgmix/proxy.toml"]
