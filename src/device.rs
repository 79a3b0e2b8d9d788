//! The one place that chooses where tensors live.
//!
//! lacoot computes on burn's `flex` CPU backend by default. Built with the `wgpu` feature it can
//! also run on any Vulkan, Metal or DX12 adapter through burn's wgpu backend, and with `cuda` on
//! NVIDIA GPUs. A [`DeviceChoice`] (the CLI's `--device`) names one; [`select`] turns it into a
//! burn [`Device`] and makes it the process's device, which [`default_device`] then returns to
//! every part of the library.

use std::fmt;
use std::str::FromStr;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use burn::backend::DispatchDevice;
use burn::tensor::{Device, Tensor};

/// What a user asks to compute on: `cpu`, `wgpu`, `wgpu:N`, `cuda`, `cuda:N` or `auto`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeviceChoice {
    /// burn's `flex` backend on the host's cores.
    #[default]
    Cpu,
    /// A wgpu adapter: the N-th one `lacoot devices` lists, or wgpu's own pick (a high-power GPU
    /// first) without an index.
    Wgpu(Option<usize>),
    /// The N-th CUDA device.
    Cuda(usize),
    /// The first GPU this build can reach (CUDA, then a wgpu adapter that is not a software
    /// rasteriser), else the CPU.
    Auto,
}

/// Why a device could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The text is not a device name.
    #[error(
        "--device {0:?}: not a device; use cpu, wgpu, wgpu:N, cuda, cuda:N or auto (`lacoot devices` lists what this machine has)"
    )]
    Unknown(String),
    /// The backend was not compiled in.
    #[error(
        "--device {choice}: this lacoot was built without the `{feature}` feature; rebuild it with `cargo build --release --features {feature}`"
    )]
    NotBuilt {
        /// The device asked for.
        choice: DeviceChoice,
        /// The Cargo feature that provides it.
        feature: &'static str,
    },
    /// The backend is compiled in but has no such device here.
    #[error("--device {choice}: {found}; `lacoot devices` lists what this machine has")]
    Missing {
        /// The device asked for.
        choice: DeviceChoice,
        /// What was found instead.
        found: String,
    },
    /// Reading a result back from the device failed.
    #[error("reading results back from the device: {0}")]
    Read(String),
}

impl fmt::Display for DeviceChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Wgpu(None) => write!(f, "wgpu"),
            Self::Wgpu(Some(index)) => write!(f, "wgpu:{index}"),
            Self::Cuda(index) => write!(f, "cuda:{index}"),
            Self::Auto => write!(f, "auto"),
        }
    }
}

impl FromStr for DeviceChoice {
    type Err = DeviceError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let unknown = || DeviceError::Unknown(text.to_string());
        let (name, index) = match text.split_once(':') {
            Some((name, index)) => (name, Some(index.parse::<usize>().map_err(|_| unknown())?)),
            None => (text, None),
        };
        match (name.to_ascii_lowercase().as_str(), index) {
            ("cpu", None) => Ok(Self::Cpu),
            ("auto", None) => Ok(Self::Auto),
            ("wgpu", index) => Ok(Self::Wgpu(index)),
            ("cuda", index) => Ok(Self::Cuda(index.unwrap_or(0))),
            _ => Err(unknown()),
        }
    }
}

/// One device this build can compute on, as `lacoot devices` lists it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DeviceInfo {
    /// What to pass to `--device` to use it.
    pub spec: String,
    /// The name the driver gives it.
    pub name: String,
    /// CPU, discrete, integrated or virtual GPU, and the runtime that reaches it.
    pub kind: String,
    /// Memory the device reports, in bytes (the host's for the CPU; unknown for some adapters).
    pub memory_bytes: Option<u64>,
}

/// The process's device and its description, set by [`select`]; `flex` until then.
static SELECTED: RwLock<Option<(Device, String)>> = RwLock::new(None);

/// Reads made through [`read_to_host`] since the process started.
static HOST_READS: AtomicU64 = AtomicU64::new(0);

/// The values of `tensor` on the host, as f64: a device-to-host transfer, which waits for the work
/// queued on the device (a synchronisation). The training and evaluation loops (once per step and
/// once per evaluation) and the distances' reported numbers read through here, and [`host_reads`]
/// counts every read.
pub fn read_to_host(tensor: Tensor<1>) -> Result<Vec<f64>, DeviceError> {
    HOST_READS.fetch_add(1, Ordering::Relaxed);
    tensor
        .try_into_vec_as::<f64>()
        .map_err(|e| DeviceError::Read(e.to_string()))
}

/// How many times [`read_to_host`] has read from a device in this process.
pub fn host_reads() -> u64 {
    HOST_READS.load(Ordering::Relaxed)
}

/// Resolves `choice` to a device, checks that it exists, and makes it the device
/// [`default_device`] returns from now on. Returns the device and what it is.
pub fn select(choice: DeviceChoice) -> Result<(Device, String), DeviceError> {
    let (device, label) = resolve(choice)?;
    *SELECTED.write().unwrap_or_else(|e| e.into_inner()) = Some((device.clone(), label.clone()));
    Ok((device, label))
}

/// Selects the device the `LACOOT_DEVICE` environment variable names (as `--device` would), or
/// keeps the CPU when it is unset: how the benchmarks, which take no flags, are pointed at a GPU.
/// Returns the device's description.
pub fn select_from_env() -> Result<String, DeviceError> {
    let choice = match std::env::var("LACOOT_DEVICE") {
        Ok(text) => text.parse()?,
        Err(_) => DeviceChoice::Cpu,
    };
    select(choice).map(|(_, label)| label)
}

/// What [`default_device`] is, in words (`cpu (burn flex)`, `wgpu:0: llvmpipe …`), as runs
/// record it.
pub fn selected_label() -> String {
    SELECTED
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map_or_else(cpu_label, |(_, label)| label.clone())
}

/// The device lacoot computes on, without autodiff: the one [`select`] chose, else `flex`.
///
/// Wrap it with [`Device::autodiff`] when gradients are needed.
pub fn default_device() -> Device {
    SELECTED
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map_or_else(Device::flex, |(device, _)| device.clone())
}

/// The default device with automatic differentiation enabled.
pub fn autodiff_device() -> Device {
    default_device().autodiff()
}

/// Whether `device` computes on the host (burn's `flex` backend), with or without autodiff.
pub fn is_host(device: &Device) -> bool {
    fn host(device: &DispatchDevice) -> bool {
        match device {
            DispatchDevice::Flex(_) => true,
            DispatchDevice::Autodiff(autodiff) => host(&autodiff.clone().inner()),
            #[allow(
                unreachable_patterns,
                reason = "unreachable in a build without a GPU feature"
            )]
            _ => false,
        }
    }
    host(device.as_dispatch())
}

/// The device `choice` names, with a one-line description (its name, and its runtime).
pub fn resolve(choice: DeviceChoice) -> Result<(Device, String), DeviceError> {
    match choice {
        DeviceChoice::Cpu => Ok((Device::flex(), cpu_label())),
        DeviceChoice::Wgpu(index) => gpu::wgpu(choice, index),
        DeviceChoice::Cuda(index) => gpu::cuda(choice, index),
        DeviceChoice::Auto => Ok(gpu::first_gpu().unwrap_or_else(|| (Device::flex(), cpu_label()))),
    }
}

/// Every device this build can compute on: the CPU first, then each GPU adapter found.
pub fn list_devices() -> Vec<DeviceInfo> {
    let mut devices = vec![DeviceInfo {
        spec: "cpu".into(),
        name: format!("{} threads", rayon::current_num_threads()),
        kind: "cpu (burn flex)".into(),
        memory_bytes: host_memory_bytes(),
    }];
    devices.extend(gpu::adapters().into_iter().map(|(info, _)| info));
    devices
}

/// The host's memory (`MemTotal` of `/proc/meminfo`), where the system reports it.
fn host_memory_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn cpu_label() -> String {
    "cpu (burn flex)".into()
}

/// Whether this build has a GPU backend compiled in.
pub const fn gpu_backends_built() -> bool {
    cfg!(any(feature = "wgpu", feature = "cuda"))
}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod gpu {
    //! The cubecl runtimes: listing their devices and turning a choice into one.

    use burn::tensor::Device;
    use cubecl::Device as CubeDevice;
    use cubecl::device::WgpuDeviceKind;

    use super::{DeviceChoice, DeviceError, DeviceInfo};

    /// Every cubecl device of the compiled-in runtimes with its listing, in `--device` order:
    /// wgpu adapters numbered from 0, then CUDA devices numbered from 0.
    pub(super) fn adapters() -> Vec<(DeviceInfo, CubeDevice)> {
        let all = CubeDevice::enumerate_all();
        let mut listed = Vec::new();
        for (prefix, runtime) in [
            ("wgpu", cubecl::RuntimeId::Wgpu),
            ("cuda", cubecl::RuntimeId::Cuda),
        ] {
            let of_runtime = all.iter().filter(|d| d.runtime() == runtime);
            for (index, device) in of_runtime.enumerate() {
                listed.push((
                    describe(format!("{prefix}:{index}"), device),
                    device.clone(),
                ));
            }
        }
        listed
    }

    fn describe(spec: String, device: &CubeDevice) -> DeviceInfo {
        let client = device.client();
        let properties = client.properties();
        let kind = match device {
            CubeDevice::Wgpu(wgpu) => {
                let kind = match wgpu.kind {
                    WgpuDeviceKind::DiscreteGpu(_) => "discrete GPU".to_string(),
                    WgpuDeviceKind::IntegratedGpu(_) => "integrated GPU".to_string(),
                    WgpuDeviceKind::VirtualGpu(_) => "virtual GPU".to_string(),
                    WgpuDeviceKind::Cpu => "software rasteriser on the CPU".to_string(),
                    ref other => format!("{other:?}"),
                };
                format!("{kind} ({})", client.name())
            }
            other => format!("{:?} GPU", other.runtime()),
        };
        DeviceInfo {
            spec,
            name: properties.identity.name.clone(),
            kind,
            memory_bytes: properties.memory.max_memory(),
        }
    }

    fn is_software(device: &CubeDevice) -> bool {
        matches!(device, CubeDevice::Wgpu(wgpu) if matches!(wgpu.kind, WgpuDeviceKind::Cpu))
    }

    fn pick(
        choice: DeviceChoice,
        prefix: &str,
        index: Option<usize>,
    ) -> Result<(Device, String), DeviceError> {
        let of_kind: Vec<_> = adapters()
            .into_iter()
            .filter(|(info, _)| info.spec.starts_with(prefix))
            .collect();
        let found = match of_kind.len() {
            0 => format!("no {prefix} device found"),
            1 => format!("one {prefix} device found ({prefix}:0)"),
            n => format!(
                "{n} {prefix} devices found ({prefix}:0 to {prefix}:{})",
                n - 1
            ),
        };
        let chosen = match index {
            Some(index) => of_kind.into_iter().nth(index),
            // wgpu's own preference: a real GPU before a software rasteriser.
            None => {
                let mut sorted = of_kind;
                sorted.sort_by_key(|(_, device)| is_software(device));
                sorted.into_iter().next()
            }
        };
        let (info, device) = chosen.ok_or(DeviceError::Missing { choice, found })?;
        Ok((
            Device::from(device),
            format!("{}: {} ({})", info.spec, info.name, info.kind),
        ))
    }

    pub(super) fn wgpu(
        choice: DeviceChoice,
        index: Option<usize>,
    ) -> Result<(Device, String), DeviceError> {
        if !cfg!(feature = "wgpu") {
            return Err(DeviceError::NotBuilt {
                choice,
                feature: "wgpu",
            });
        }
        pick(choice, "wgpu", index)
    }

    pub(super) fn cuda(
        choice: DeviceChoice,
        index: usize,
    ) -> Result<(Device, String), DeviceError> {
        if !cfg!(feature = "cuda") {
            return Err(DeviceError::NotBuilt {
                choice,
                feature: "cuda",
            });
        }
        pick(choice, "cuda", Some(index))
    }

    /// The first CUDA device, else the first wgpu adapter that is not a software rasteriser.
    pub(super) fn first_gpu() -> Option<(Device, String)> {
        let listed = adapters();
        let cuda = listed
            .iter()
            .position(|(info, _)| info.spec.starts_with("cuda"));
        let hardware = listed
            .iter()
            .position(|(info, device)| info.spec.starts_with("wgpu") && !is_software(device));
        let (info, device) = listed.into_iter().nth(cuda.or(hardware)?)?;
        Some((
            Device::from(device),
            format!("{}: {} ({})", info.spec, info.name, info.kind),
        ))
    }
}

#[cfg(not(any(feature = "wgpu", feature = "cuda")))]
mod gpu {
    //! No GPU runtime is compiled in: every GPU choice says which feature would provide it.

    use burn::tensor::Device;

    use super::{DeviceChoice, DeviceError, DeviceInfo};

    pub(super) fn adapters() -> Vec<(DeviceInfo, ())> {
        Vec::new()
    }

    pub(super) fn wgpu(
        choice: DeviceChoice,
        _: Option<usize>,
    ) -> Result<(Device, String), DeviceError> {
        Err(DeviceError::NotBuilt {
            choice,
            feature: "wgpu",
        })
    }

    pub(super) fn cuda(choice: DeviceChoice, _: usize) -> Result<(Device, String), DeviceError> {
        Err(DeviceError::NotBuilt {
            choice,
            feature: "cuda",
        })
    }

    pub(super) fn first_gpu() -> Option<(Device, String)> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_parse_and_print_back() {
        for text in ["cpu", "wgpu", "wgpu:1", "cuda:0", "auto"] {
            let choice: DeviceChoice = text.parse().unwrap();
            assert_eq!(choice.to_string(), text);
        }
        assert_eq!(
            "cuda".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Cuda(0)
        );
        assert_eq!(
            "WGPU:2".parse::<DeviceChoice>().unwrap(),
            DeviceChoice::Wgpu(Some(2))
        );
    }

    #[test]
    fn bad_names_say_what_is_accepted() {
        for text in ["gpu", "cpu:1", "wgpu:x", "cuda:-1", ""] {
            let message = text.parse::<DeviceChoice>().unwrap_err().to_string();
            assert!(message.contains("use cpu, wgpu"), "{text}: {message}");
        }
    }

    #[test]
    fn the_cpu_is_always_listed_first() {
        let listed = list_devices();
        assert_eq!(listed[0].spec, "cpu");
        assert!(listed.iter().skip(1).all(|d| d.spec.contains(':')));
    }
}
