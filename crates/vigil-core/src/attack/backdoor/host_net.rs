//! Small convolutional networks evaluated on the host, from exported weights: a trained trigger
//! network becomes a pure function of one image, like every other trigger (thread-safe, no
//! device, no autodiff).

use burn::nn::conv::Conv2d;

/// One 3x3, stride-1, padding-1 convolution on the host: `input` is `c_in x h x w`, `weight`
/// `c_out x c_in x 3 x 3`.
pub fn host_conv3x3(
    input: &[f32],
    (c_in, h, w): (usize, usize, usize),
    weight: &[f32],
    bias: &[f32],
) -> Vec<f32> {
    let c_out = bias.len();
    let mut out = vec![0.0f32; c_out * h * w];
    for o in 0..c_out {
        let plane = &mut out[o * h * w..(o + 1) * h * w];
        plane.iter_mut().for_each(|v| *v = bias[o]);
        for i in 0..c_in {
            let src = &input[i * h * w..(i + 1) * h * w];
            for ky in 0..3 {
                for kx in 0..3 {
                    let k = weight[((o * c_in + i) * 3 + ky) * 3 + kx];
                    for y in 0..h {
                        let sy = y as isize + ky as isize - 1;
                        if sy < 0 || sy >= h as isize {
                            continue;
                        }
                        for x in 0..w {
                            let sx = x as isize + kx as isize - 1;
                            if sx < 0 || sx >= w as isize {
                                continue;
                            }
                            plane[y * w + x] += k * src[sy as usize * w + sx as usize];
                        }
                    }
                }
            }
        }
    }
    out
}

/// 3x3 same-size convolutions with ReLU between them (none after the last), run on the host.
#[derive(Debug, Clone, Default)]
pub struct HostConvStack {
    /// `(weight, bias)` per layer.
    layers: Vec<(Vec<f32>, Vec<f32>)>,
}

impl HostConvStack {
    /// Exports the weights of 3x3, stride-1, padding-1 convolutions (with bias).
    pub fn from_convs(convs: &[&Conv2d]) -> Self {
        let layers = convs
            .iter()
            .map(|c| {
                let w: Vec<f32> = c.weight.val().into_data().iter::<f32>().collect();
                let b: Vec<f32> = c
                    .bias
                    .as_ref()
                    .map(|b| b.val().into_data().iter::<f32>().collect())
                    .unwrap_or_default();
                (w, b)
            })
            .collect();
        Self { layers }
    }

    /// Runs the stack on one `c_in x h x w` input; returns the last layer's raw output.
    pub fn forward(&self, input: Vec<f32>, c_in: usize, h: usize, w: usize) -> Vec<f32> {
        let mut x = input;
        let mut channels = c_in;
        for (k, (weight, bias)) in self.layers.iter().enumerate() {
            x = host_conv3x3(&x, (channels, h, w), weight, bias);
            channels = bias.len();
            if k + 1 < self.layers.len() {
                x.iter_mut().for_each(|v| *v = v.max(0.0));
            }
        }
        x
    }
}
