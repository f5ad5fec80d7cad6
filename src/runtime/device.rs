//! Where tensors live and in which number format: the `--device` choice (CUDA when
//! libtorch sees a GPU, else the CPU) and the `--dtype` of the measurements.

use crate::{Error, Result};
use serde::Serialize;
use tch::Kind;

/// The number formats `bench` measures in. `bf16` is the CUDA training format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    Fp32,
    Bf16,
}

impl Dtype {
    pub fn kind(self) -> Kind {
        match self {
            Dtype::Fp32 => Kind::Float,
            Dtype::Bf16 => Kind::BFloat16,
        }
    }
}

/// Where tensors live. `auto` picks CUDA when libtorch sees a GPU, else the CPU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceChoice {
    #[default]
    Auto,
    Cpu,
    Cuda,
}

impl DeviceChoice {
    pub fn resolve(self) -> Result<tch::Device> {
        // CUDA support is a library of its own, loaded only where a driver is (`cuda`).
        let cuda = match self {
            DeviceChoice::Cpu => Ok(()),
            _ => super::cuda::ensure_loaded(),
        };
        match self {
            DeviceChoice::Cpu => Ok(tch::Device::Cpu),
            DeviceChoice::Auto => Ok(tch::Device::cuda_if_available()),
            DeviceChoice::Cuda if tch::Cuda::is_available() => Ok(tch::Device::Cuda(0)),
            DeviceChoice::Cuda => Err(Error::config(
                "--device",
                format!(
                    "cuda requested but libtorch sees no GPU{}; use --device cpu",
                    cuda.err().map(|e| format!(" ({e})")).unwrap_or_default()
                ),
            )),
        }
    }
}
