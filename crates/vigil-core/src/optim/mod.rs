//! Parameter updates over any [`Module`]: optimisers, samplers and weight averages share this.
//!
//! An update rule sees one parameter at a time as a flat tensor, with its gradient and its own
//! state slots ([`ParamSlots`]). [`apply_update`] walks every float parameter of the module and
//! replaces it in place; parameters without a gradient (BatchNorm running statistics, frozen
//! tensors) are left as they are. Later methods plug in here: MAD-FA's localized SGLD keeps w* and
//! the RMSprop average in slots beside each parameter; HALO's weight average is a rule too.

pub mod adam;
pub mod schedule;
pub mod sgd;

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::Gradients;
use burn::tensor::{Tensor, TensorData};

/// Named per-parameter state, each slot a flat tensor (e.g. `"momentum"`, `"w_star"`).
#[derive(Debug, Clone, Default)]
pub struct ParamSlots {
    slots: HashMap<(ParamId, &'static str), Tensor<1>>,
}

impl ParamSlots {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// The slot `name` of parameter `id`, if set.
    pub fn get(&self, id: ParamId, name: &'static str) -> Option<&Tensor<1>> {
        self.slots.get(&(id, name))
    }

    /// Sets slot `name` of parameter `id`.
    pub fn insert(&mut self, id: ParamId, name: &'static str, value: Tensor<1>) {
        self.slots.insert((id, name), value);
    }

    /// Removes and returns slot `name` of parameter `id` (lets the rule update it without a copy).
    pub fn take(&mut self, id: ParamId, name: &'static str) -> Option<Tensor<1>> {
        self.slots.remove(&(id, name))
    }

    /// Number of stored slots.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Slot `name` for every parameter of `module` that has it, keyed by the parameter's dotted
    /// path, as host data: what a resumable run writes to disk.
    pub fn export<M: Module>(&self, module: &M, name: &'static str) -> Vec<(String, Vec<f32>)> {
        param_infos(module)
            .into_iter()
            .filter_map(|p| {
                let t = self.get(p.id, name)?;
                Some((p.path, t.to_data().try_to_vec::<f32>().ok()?))
            })
            .collect()
    }

    /// Restores slot `name` from `(path, values)` pairs written by [`ParamSlots::export`].
    /// Returns the paths that match no parameter of `module`, or whose length differs from it.
    pub fn import<M: Module>(
        &mut self,
        module: &M,
        name: &'static str,
        entries: Vec<(String, Vec<f32>)>,
    ) -> Vec<String> {
        let infos: HashMap<String, ParamInfo> = param_infos(module)
            .into_iter()
            .map(|p| (p.path.clone(), p))
            .collect();
        let Some(device) = module.devices().into_iter().next() else {
            return entries.into_iter().map(|(path, _)| path).collect();
        };
        let mut rejected = Vec::new();
        for (path, values) in entries {
            match infos.get(&path) {
                Some(info) if info.numel == values.len() => {
                    let n = values.len();
                    let t = Tensor::<1>::from_data(TensorData::new(values, [n]), &device)
                        .without_autodiff();
                    self.insert(info.id, name, t);
                }
                _ => rejected.push(path),
            }
        }
        rejected
    }
}

/// Sets slot `name` of every float tensor of `module` (buffers included) to its current value,
/// flat and without autodiff: a snapshot that update rules can read, such as MAD-FA's w*.
pub fn snapshot_slots<M: Module>(module: &M, slots: &mut ParamSlots, name: &'static str) {
    struct Snapshot<'a> {
        slots: &'a mut ParamSlots,
        name: &'static str,
    }
    impl ModuleVisitor for Snapshot<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let value = param.val().without_autodiff();
            let n = value.dims().iter().product::<usize>();
            self.slots.insert(param.id, self.name, value.reshape([n]));
        }
    }
    module.visit(&mut Snapshot { slots, name });
}

/// How many values the float parameters of `module` that require gradients hold: what one step
/// of an update rule over it touches at most.
pub fn trainable_values<M: Module>(module: &M) -> usize {
    struct Count(usize);
    impl ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            if param.is_require_grad() {
                self.0 += param.lazy_shape().num_elements();
            }
        }
    }
    let mut count = Count(0);
    module.visit(&mut count);
    count.0
}

/// One update rule: new value of a parameter from its value and gradient (both flat, without
/// autodiff) and its slots.
pub trait UpdateRule {
    /// Returns the parameter's next value.
    fn update(
        &mut self,
        id: ParamId,
        value: Tensor<1>,
        grad: Tensor<1>,
        slots: &mut ParamSlots,
    ) -> Tensor<1>;
}

/// Applies `rule` to every float parameter of `module` that has a gradient in `grads`.
pub fn apply_update<M: Module>(
    module: M,
    grads: &Gradients,
    rule: &mut impl UpdateRule,
    slots: &mut ParamSlots,
) -> M {
    let mut mapper = UpdateMapper { grads, rule, slots };
    module.map(&mut mapper)
}

struct UpdateMapper<'a, R> {
    grads: &'a Gradients,
    rule: &'a mut R,
    slots: &'a mut ParamSlots,
}

impl<R: UpdateRule> ModuleMapper for UpdateMapper<'_, R> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = tensor.grad(self.grads) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let dims = tensor.dims();
        let n = dims.iter().product::<usize>();
        let value = tensor.without_autodiff().reshape([n]);
        let next = self.rule.update(id, value, grad.reshape([n]), self.slots);
        let mut next = Tensor::<D>::from_inner(next.reshape(dims));
        if require_grad {
            next = next.require_grad();
        }
        Param::from_mapped_value(id, next, mapper)
    }
}

/// One float tensor of a module: its PyTorch-style dotted path, id and element count.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamInfo {
    /// Checkpoint name, e.g. `layer1.0.bn1.weight` (enum variant names left out).
    pub path: String,
    /// burn's id of the parameter in this module instance.
    pub id: ParamId,
    /// Number of scalars.
    pub numel: usize,
}

/// Every float tensor of a module (parameters and buffers), in visiting order.
pub fn param_infos<M: Module>(module: &M) -> Vec<ParamInfo> {
    struct Paths {
        stack: Vec<String>,
        out: Vec<ParamInfo>,
    }
    impl ModuleVisitor for Paths {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.stack.push(skip_variant(name, container_type));
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.stack.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
            let path = self
                .stack
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect::<Vec<_>>()
                .join(".");
            self.out.push(ParamInfo {
                path,
                id: param.id,
                numel: param.lazy_shape().num_elements(),
            });
        }
    }
    let mut visitor = Paths {
        stack: Vec::new(),
        out: Vec::new(),
    };
    module.visit(&mut visitor);
    visitor.out
}

/// burn reports an enum variant as a module named after the variant with a container type of
/// the form `Enum:Variant`; PyTorch names have no such level.
fn skip_variant(name: &str, container_type: &str) -> String {
    if container_type.starts_with("Enum:") {
        String::new()
    } else {
        name.to_string()
    }
}
