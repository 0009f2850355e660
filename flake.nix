# Reproducible development shells for edgesim (`nix develop`, `nix develop .#sim`, …).
#
#   default   Rust development: the toolchain pinned in rust-toolchain.toml (rust-overlay
#             reads the file, so the channel is stated once), rust-analyzer.
#   sim       the edge simulation tools: kind, flux, kubectl, kustomize, qemu, ansible,
#             iperf3, nftables, iproute2 (plus the default shell's toolchain).
#   cross     arm64 and static builds (images/build.sh, .ci/agent-static): the pinned toolchain
#             with the aarch64 and x86_64 musl targets; aarch64 links with the toolchain's
#             rust-lld (.cargo/config.toml), x86_64 musl with the host's cc; qemu-user runs
#             the arm64 binaries.
#   kubeedge  a KubeEdge-style edge cluster by hand: k3s, kubectl, the mosquitto MQTT broker
#             that device mappers talk to. keadm is not provided here.
#   jetson    CUDA tooling for the inference workload's `cuda` feature (nvcc, the CUDA
#             toolkit). CUDA is unfree: only this shell's package set allows unfree packages.
#             On a Jetson itself, JetPack's toolkit is the one that matches the board.
#
# The optional parts are shells of their own so that the default shell stays light.
{
  description = "edgesim: a network-partition and hardware-constraint simulator for edge computing";

  inputs = {
    nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
    rust-overlay = {
      url = "github:oxalica/rust-overlay";
      inputs.nixpkgs.follows = "nixpkgs";
    };
  };

  outputs = { self, nixpkgs, rust-overlay }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forSystems = f: nixpkgs.lib.genAttrs systems (system: f system);
    in
    {
      devShells = forSystems (system:
        let
          pkgs = import nixpkgs {
            inherit system;
            overlays = [ rust-overlay.overlays.default ];
          };
          # rust-toolchain.toml: channel and components (rustfmt, clippy).
          toolchain = pkgs.rust-bin.fromRustupToolchainFile ./rust-toolchain.toml;
          crossToolchain = toolchain.override {
            targets = [ "aarch64-unknown-linux-musl" "x86_64-unknown-linux-musl" ];
          };
          # Unfree packages (CUDA) are allowed in this package set only.
          unfreePkgs = import nixpkgs {
            inherit system;
            config.allowUnfree = true;
          };
          rustShell = [ toolchain pkgs.rust-analyzer pkgs.pkg-config ];
          simTools = with pkgs; [
            kind
            fluxcd
            kubectl
            kustomize
            qemu
            ansible
            iperf3
            nftables
            iproute2
          ];
        in
        {
          default = pkgs.mkShell {
            packages = rustShell;
          };

          sim = pkgs.mkShell {
            packages = rustShell ++ simTools;
          };

          cross = pkgs.mkShell {
            packages = [ crossToolchain pkgs.qemu pkgs.file pkgs.binutils ];
          };

          kubeedge = pkgs.mkShell {
            packages = with pkgs; [ k3s kubectl mosquitto ];
          };

          jetson = pkgs.mkShell {
            packages = rustShell ++ [
              unfreePkgs.cudaPackages.cudatoolkit
            ];
            shellHook = ''
              export CUDA_PATH=${unfreePkgs.cudaPackages.cudatoolkit}
            '';
          };
        });
    };
}
