//! Weights drawn from a host RNG the caller seeds, instead of burn's device RNG: that one is
//! process-wide, so library code that seeds it races with every other thread drawing from it
//! (parallel tests, a benchmark running two models).

use burn::module::{Module, ModuleMapper, Param};
use burn::tensor::{Tensor, TensorData};
use rand::Rng;

/// `module` with every float parameter redrawn uniform in `+-1/sqrt(fan_in)` from `rng`: the
/// distribution of burn's default initialiser for `Conv2d` and `Linear` (Kaiming-uniform with
/// gain `1/sqrt(3)`), the same as PyTorch's defaults for these layers.
///
/// `fan_in` is the product of a weight's dimensions after the first for convolutions (`[out,
/// in, kh, kw]`), the first dimension for burn's row-layout `Linear` weight (`[in, out]`), and a
/// bias takes the fan-in of the weight visited just before it (burn visits a layer's weight, then
/// its bias). Only for modules made of such layers: a BatchNorm's scale and shift would be drawn
/// too.
pub fn fan_in_uniform<M: Module>(module: M, rng: &mut impl Rng) -> M {
    module.map(&mut FanInUniform { rng, fan_in: None })
}

struct FanInUniform<'a, R> {
    rng: &'a mut R,
    fan_in: Option<usize>,
}

impl<R: Rng> ModuleMapper for FanInUniform<'_, R> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        redraw(param, |dims| {
            let fan_in = match D {
                1 => self.fan_in.unwrap_or(dims[0]),
                2 => dims[0],
                _ => dims[1..].iter().product(),
            };
            if D > 1 {
                self.fan_in = Some(fan_in);
            }
            let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
            let n = dims.iter().product::<usize>();
            (0..n)
                .map(|_| self.rng.random_range(-bound..bound))
                .collect()
        })
    }
}

/// `param` with new values from `draw(dims)` (row-major), on the same device, keeping its id and
/// whether it requires a gradient.
pub(crate) fn redraw<const D: usize>(
    param: Param<Tensor<D>>,
    draw: impl FnOnce(&[usize]) -> Vec<f32>,
) -> Param<Tensor<D>> {
    let (id, tensor, mapper) = param.consume();
    let dims = tensor.dims();
    let values = draw(&dims);
    let mut next = Tensor::<D>::from_data(TensorData::new(values, dims), &tensor.device());
    if tensor.is_require_grad() {
        next = next.require_grad();
    }
    Param::from_mapped_value(id, next, mapper)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::default_device;
    use burn::nn::conv::{Conv2d, Conv2dConfig};
    use burn::nn::{Linear, LinearConfig};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[derive(Module, Debug)]
    struct Net {
        conv: Conv2d,
        fc: Linear,
    }

    fn net() -> Net {
        let device = default_device();
        Net {
            conv: Conv2dConfig::new([3, 4], [3, 3]).init(&device),
            fc: LinearConfig::new(50, 6).init(&device),
        }
    }

    fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data().iter::<f32>().collect()
    }

    #[test]
    fn draws_depend_on_the_host_seed_only_and_respect_each_layers_fan_in() {
        let a = fan_in_uniform(net(), &mut StdRng::seed_from_u64(7));
        let b = fan_in_uniform(net(), &mut StdRng::seed_from_u64(7));
        let c = fan_in_uniform(net(), &mut StdRng::seed_from_u64(8));
        let parts = |n: &Net| {
            [
                values(n.conv.weight.val()),
                values(n.conv.bias.as_ref().unwrap().val()),
                values(n.fc.weight.val()),
                values(n.fc.bias.as_ref().unwrap().val()),
            ]
        };
        let (pa, pb, pc) = (parts(&a), parts(&b), parts(&c));
        assert_eq!(pa, pb);
        assert_ne!(pa, pc);
        // Conv fan-in 3 * 3 * 3 = 27 for its weight and bias, Linear fan-in 50 for both.
        for (part, fan_in) in pa.iter().zip([27.0f32, 27.0, 50.0, 50.0]) {
            let bound = 1.0 / fan_in.sqrt();
            assert!(part.iter().all(|v| v.abs() < bound), "outside +-{bound}");
        }
        // The weights fill their range (108 and 300 uniform draws reach 80% of the bound).
        for (part, fan_in) in [(&pa[0], 27.0f32), (&pa[2], 50.0)] {
            let largest = part.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(largest > 0.8 / fan_in.sqrt(), "largest {largest}");
        }
        assert_eq!(pa[0].len(), 4 * 27);
        assert_eq!(pa[2].len(), 50 * 6);
    }
}
