//! Code generation for `#[derive(CacheDeps)]`, from the model in [`crate::internals::ast`].
//!
//! Everything is named by absolute path through the runtime crate (`::matroska` or the
//! `#[cache(crate = "...")]` override), impls sit inside `const _: () = { ... };`, and the
//! only items added to the user's module are the condition types they call.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, Ident};

use crate::internals::ast::{Container, Field, Scope};
use crate::internals::ctxt::Ctxt;

/// Expands `#[derive(CacheDeps)]`. On invalid input: the errors, plus stub impls so the rest of
/// the user's crate does not add a flood of follow-on errors.
pub fn derive_cache_deps(input: &DeriveInput) -> TokenStream {
    let cx = Ctxt::new();
    let cont = Container::from_ast(&cx, input);
    match (cont, cx.check()) {
        (Some(cont), Ok(())) => expand(&cont),
        (cont, result) => {
            let mut out = fallback(input, cont.as_ref());
            if let Err(err) = result {
                out.extend(err.to_compile_error());
            }
            out
        }
    }
}

fn expand(cont: &Container<'_>) -> TokenStream {
    let cache_deps = impl_cache_deps(cont);
    let collect_deps = impl_collect_deps(cont);
    if cont.is_sea_orm_model_ex() {
        // SeaORM 2.0's `#[sea_orm::model]` copies the derive and `#[scope]` from `Model` onto
        // the generated `ModelEx` (the model with its related rows). The condition types, the
        // scope and the table belong to `Model`'s expansion; generating them again here would
        // define them twice. `ModelEx` gets its key and dependencies.
        return quote! {
            #[doc(hidden)]
            #[allow(non_upper_case_globals, unused_qualifications, clippy::all)]
            const _: () = {
                #cache_deps
                #collect_deps
            };
        };
    }
    let scoped = impl_scoped(cont);
    let watched = impl_watched_table(cont);
    let conditions = cont.scopes.iter().map(|s| condition_type(cont, s));
    let condition_impls = cont.scopes.iter().map(|s| impl_condition(cont, s));
    // A `watch` scope's fields need not be columns: no SQL filter for it.
    let filters = cont
        .scopes
        .iter()
        .filter(|s| cont.is_sea_orm_model() && s.watch.is_none())
        .map(|s| impl_scope_filter(cont, s));
    let diesel_filters = cont
        .scopes
        .iter()
        .filter(|_| cont.is_diesel_model())
        .map(|s| impl_diesel_filter(cont, s));
    let diesel_key = diesel_key_check(cont);
    quote! {
        #(#conditions)*

        #[doc(hidden)]
        #[allow(non_upper_case_globals, unused_qualifications, clippy::all)]
        const _: () = {
            #cache_deps
            #collect_deps
            #scoped
            #watched
            #(#condition_impls)*
            #(#filters)*
            #(#diesel_filters)*
            #diesel_key
        };
    }
}

/// On a Diesel model with `#[diesel(table_name = ..)]`: a compile-time check that the key's
/// columns, in the key's order, are `table!`'s primary key (`<table as Table>::PrimaryKey`:
/// a column, or a tuple of them). Diesel's `find` takes that key's values in `table!`'s
/// order; a cache key in another order would make `find`'s entries depend on a key no write
/// ever invalidates. (Without `table_name` the module is Diesel's inferred name, which need
/// not exist for a model only ever loaded with `sql_query`: no check.)
fn diesel_key_check(cont: &Container<'_>) -> Option<TokenStream> {
    if !cont.is_diesel_model() || cont.attrs.diesel_table.is_none() || cont.key.is_empty() {
        return None;
    }
    let path = &cont.crate_path;
    let table = cont.diesel_table();
    let columns = cont.key.iter().map(|&i| {
        let column = cont.fields[i].diesel_column();
        quote!(#table::#column)
    });
    let key = if cont.key.len() == 1 {
        quote!(#(#columns)*)
    } else {
        quote!((#(#columns),*))
    };
    let span = match &cont.attrs.diesel_primary_key {
        Some(columns) => columns[0].span(),
        None => cont.fields[cont.key[0]].ident.span(),
    };
    let check = quote_spanned! {span=>
        #path::__private::diesel::assert_primary_key::<#table::table, #key>
    };
    Some(quote! {
        #path::__private::diesel_scope_filter! {
            #[allow(dead_code)]
            fn __matroska_key_is_table_primary_key() {
                #check();
            }
        }
    })
}

fn impl_cache_deps(cont: &Container<'_>) -> TokenStream {
    let path = &cont.crate_path;
    let ident = cont.ident;
    let entity = &cont.entity;
    let (impl_generics, ty_generics, where_clause) = cont.generics.split_for_impl();
    let key = cont
        .key
        .iter()
        .map(|&i| to_value(path, &cont.fields[i], quote!(self)));
    // The conditions the relay gives each tracked column's value (`TableSpec::dependencies`).
    let tracked = (!cont.tracked.is_empty()).then(|| {
        let conditions = cont.tracked.iter().map(|&i| {
            let field = &cont.fields[i];
            let name = field_name(cont, field);
            let value = to_value(path, field, quote!(self));
            quote!(#path::Dependency::condition(#entity, [(#name, #value)]))
        });
        quote! {
            fn tracked_dependencies(&self) -> #path::__private::Vec<#path::Dependency> {
                #path::__private::vec![#(#conditions),*]
            }
        }
    });
    quote! {
        #[automatically_derived]
        impl #impl_generics #path::CacheDeps for #ident #ty_generics #where_clause {
            fn entity_name() -> &'static str {
                #entity
            }

            fn primary_key(&self) -> #path::Dependency {
                #path::Dependency::primary_key(#entity, [#(#key),*])
            }

            #tracked
        }
    }
}

fn impl_collect_deps(cont: &Container<'_>) -> TokenStream {
    let path = &cont.crate_path;
    let ident = cont.ident;
    let related: Vec<&Field<'_>> = cont
        .fields
        .iter()
        .filter(|f| f.attrs.related.is_some())
        .collect();
    let mut generics = cont.generics.clone();
    if !generics.params.is_empty() {
        // Like serde's inferred bounds: a generic related field must collect too.
        let where_clause = generics.make_where_clause();
        for field in &related {
            let ty = field.ty;
            where_clause
                .predicates
                .push(syn::parse_quote!(#ty: #path::CollectDeps));
        }
    }
    let (impl_generics, ty_generics, where_clause) = generics.split_for_impl();
    let set = Ident::new("__set", Span::mixed_site());
    let related = related.iter().map(|field| {
        let name = field.ident;
        let collect = respan(quote!(#path::CollectDeps::collect_deps), field.ty.span());
        quote!(#collect(&self.#name, #set);)
    });
    quote! {
        #[automatically_derived]
        impl #impl_generics #path::CollectDeps for #ident #ty_generics #where_clause {
            fn collect_deps(&self, #set: &mut #path::DependencySet) {
                #set.insert(#path::CacheDeps::primary_key(self));
                #(#related)*
            }
        }
    }
}

/// `Scoped` for every non-generic struct, with one extractor per `#[scope]` (none is a valid
/// scope: its `invalidate_for` still reaches the lists that depend on any change).
fn impl_scoped(cont: &Container<'_>) -> TokenStream {
    if !cont.generics.params.is_empty() {
        return TokenStream::new();
    }
    let path = &cont.crate_path;
    let ident = cont.ident;
    let entity = &cont.entity;
    // Call-site hygiene (it is respanned at field types), with a name no `when` expression
    // would use.
    let object = Ident::new("__matroska_object", Span::call_site());
    let describes = cont.scopes.iter().map(|scope| {
        let names = scope
            .fields
            .iter()
            .map(|&i| field_name(cont, &cont.fields[i]));
        let values = scope
            .fields
            .iter()
            .map(|&i| to_value(path, &cont.fields[i], quote!(#object)));
        let when = scope.when.as_ref().map(|when| {
            // Spanned at the expression: one that is not an `Fn(&Self) -> bool` is reported
            // there.
            let check = respan(quote!(#path::__private::when::<#ident, _>), when.span());
            let object = respan(quote!(#object), when.span());
            quote! {
                if !#check(#when, #object) {
                    return #path::__private::None;
                }
            }
        });
        match &scope.watch {
            Some(watch) => {
                let watch = watch_names(cont, watch);
                quote! {
                    .describe_watching(&[#(#names),*], &[#(#watch),*], |#object: &#ident| {
                        #path::__private::Some(#path::__private::vec![#(#values),*])
                    })
                }
            }
            None => quote! {
                .describe(&[#(#names),*], |#object: &#ident| {
                    #when
                    #path::__private::Some(#path::__private::vec![#(#values),*])
                })
            },
        }
    });
    let folds = folds(cont).map(|(name, fold)| quote!(.fold(#name, #path::Fold::#fold)));
    quote! {
        #[automatically_derived]
        impl #path::Scoped for #ident {
            fn scope() -> &'static #path::Scope<Self> {
                static SCOPE: #path::__private::OnceLock<#path::Scope<#ident>> =
                    #path::__private::OnceLock::new();
                SCOPE.get_or_init(|| #path::Scope::new(#entity) #(#describes)* #(#folds)*)
            }
        }
    }
}

/// `WatchedTable` for every non-generic struct: the table (the entity name; SeaORM's
/// `table_name`), the key columns, each scope's columns and a Diesel model's `belongs_to`
/// foreign keys (tracked) with their fields' decoders, so the outbox relay computes the same
/// dependencies as a hooked save.
fn impl_watched_table(cont: &Container<'_>) -> TokenStream {
    if !cont.generics.params.is_empty() {
        return TokenStream::new();
    }
    let path = &cont.crate_path;
    let ident = cont.ident;
    let entity = &cont.entity;
    let decoder = |field: &Field<'_>| {
        let ty = field.ty;
        quote!((&#path::__private::DecoderProbe::<#ty>::new()).decoder())
    };
    let keys = cont.key.iter().map(|&i| {
        let field = &cont.fields[i];
        let name = field_name(cont, field);
        let decode = decoder(field);
        quote!(.key(#name, #decode))
    });
    let scopes = cont.scopes.iter().map(|scope| {
        let columns = scope.fields.iter().map(|&i| {
            let field = &cont.fields[i];
            let name = field_name(cont, field);
            let decode = decoder(field);
            quote!((#name, #decode))
        });
        let guarded = scope.when.is_some();
        match &scope.watch {
            Some(watch) => {
                let watch = watch_names(cont, watch);
                quote!(.scope_watching(&[#(#watch),*]))
            }
            None => quote!(.scope(&[#(#columns),*], #guarded)),
        }
    });
    let tracked = cont.tracked.iter().map(|&i| {
        let field = &cont.fields[i];
        let name = field_name(cont, field);
        let decode = decoder(field);
        quote!(.tracked(#name, #decode))
    });
    let folds = folds(cont).map(|(name, fold)| quote!(.fold(#name, #path::Fold::#fold)));
    quote! {
        #[automatically_derived]
        impl #path::WatchedTable for #ident {
            fn watched_table() -> #path::TableSpec {
                #[allow(unused_imports)]
                use #path::__private::{ViaFromDbJson as _, ViaUntyped as _};
                #path::TableSpec::new(#entity, #entity) #(#keys)* #(#scopes)* #(#tracked)* #(#folds)*
            }
        }
    }
}

/// The condition type of one scope: a struct with exactly the scope's fields, each of the
/// field's own type, so a cached query can name nothing else.
fn condition_type(cont: &Container<'_>, scope: &Scope) -> TokenStream {
    let ident = cont.ident;
    let vis = cont.vis;
    let name = &scope.type_name;
    let fields = scope.fields.iter().map(|&i| &cont.fields[i]);
    let list = english_list(
        scope
            .fields
            .iter()
            .map(|&i| format!("`{}`", cont.fields[i].name())),
    );
    let attr = scope
        .field_tokens
        .iter()
        .map(crate::internals::ast::unraw)
        .collect::<Vec<_>>()
        .join(", ");
    let doc = format!(
        " The filter of a cached list of [`{ident}`] by {list}: generated by \
         `#[scope({attr})]`.\n\n \
         Build it with a struct literal (a misspelt field or a value of the wrong type does \
         not compile), then put [`dependencies`](Self::dependencies) with the cached list: \
         it is invalidated when a row matching this filter is created, deleted, or moved in \
         or out of it."
    );
    let fields = fields.map(|f| {
        let fident = f.ident;
        let ty = f.ty;
        let doc = format!(" Lists where `{}` equals this value.", f.name());
        quote! {
            #[doc = #doc]
            #vis #fident: #ty,
        }
    });
    quote_spanned! {scope.span=>
        #[doc = #doc]
        #[derive(::core::fmt::Debug, ::core::clone::Clone)]
        #vis struct #name {
            #(#fields)*
        }
    }
}

fn impl_condition(cont: &Container<'_>, scope: &Scope) -> TokenStream {
    let path = &cont.crate_path;
    let entity = &cont.entity;
    let name = &scope.type_name;
    let pairs = scope.fields.iter().map(|&i| {
        let field = &cont.fields[i];
        let fname = field_name(cont, field);
        let value = to_value(path, field, quote!(self));
        match &field.attrs.fold {
            Some(fold) => quote!((#fname, #path::Fold::#fold.apply(#value))),
            None => quote!((#fname, #value)),
        }
    });
    quote! {
        #[automatically_derived]
        impl #path::ScopeCondition for #name {
            fn scope_name(&self) -> &'static str {
                #entity
            }

            fn fields(&self) -> #path::__private::Vec<(&'static str, #path::Value)> {
                #path::__private::vec![#(#pairs),*]
            }
        }

        #[automatically_derived]
        impl #name {
            /// The dependencies of a cached list filtered by this condition: the condition
            /// and its scope's invalidate-all dependency.
            pub fn dependencies(&self) -> #path::__private::Vec<#path::Dependency> {
                #path::ScopeCondition::dependencies(self)
            }
        }
    }
}

/// `ScopeFilter` for a SeaORM model's condition: the same fields and values as a `WHERE`
/// clause, so the query and its dependency cannot disagree. `Entity` and `Column` are the
/// ones `DeriveEntityModel` generates next to `Model`.
fn impl_scope_filter(cont: &Container<'_>, scope: &Scope) -> TokenStream {
    let path = &cont.crate_path;
    let name = &scope.type_name;
    let sea_orm = quote!(#path::__private::sea_orm);
    let value = format_ident!("__value", span = Span::mixed_site());
    let exprs = scope.fields.iter().map(|&i| {
        let field = &cont.fields[i];
        let fident = field.ident;
        let column = field.column_variant();
        if field.is_option() {
            quote! {
                match &self.#fident {
                    #path::__private::Some(#value) => {
                        #sea_orm::ColumnTrait::eq(&Column::#column, ::core::clone::Clone::clone(#value))
                    }
                    #path::__private::None => #sea_orm::ColumnTrait::is_null(&Column::#column),
                }
            }
        } else {
            quote! {
                #sea_orm::ColumnTrait::eq(&Column::#column, ::core::clone::Clone::clone(&self.#fident))
            }
        }
    });
    quote! {
        #[automatically_derived]
        impl #path::__private::seaorm::ScopeFilter for #name {
            type Entity = Entity;

            fn filter(&self) -> #sea_orm::Condition {
                #sea_orm::Condition::all() #(.add(#exprs))*
            }
        }

        #[automatically_derived]
        impl #name {
            /// This condition as a SeaORM filter: `Entity::find().filter(condition.filter())`.
            pub fn filter(&self) -> #sea_orm::Condition {
                #path::__private::seaorm::ScopeFilter::filter(self)
            }
        }
    }
}

/// `ScopeFilter` (matroska-diesel's) for a Diesel model's condition, and an inherent
/// `filter()`: the scope's columns compared with the condition's values, and-ed, as a Diesel
/// expression on the model's `table!`. An `Option` field compares null-safely
/// (`col = v OR (col IS NULL AND v IS NULL)`), one expression type for `Some` and `None`.
///
/// Emitted through the facade's `diesel_scope_filter!`, which drops it when the facade's
/// `diesel` feature is off: the derive itself never depends on Diesel.
fn impl_diesel_filter(cont: &Container<'_>, scope: &Scope) -> TokenStream {
    let path = &cont.crate_path;
    let name = &scope.type_name;
    let table = cont.diesel_table();
    let d = quote!(#path::__private::diesel);
    let mut ty: Option<TokenStream> = None;
    let mut expr: Option<TokenStream> = None;
    for &i in &scope.fields {
        let field = &cont.fields[i];
        let fident = field.ident;
        let fty = field.ty;
        let column = field.diesel_column();
        let col = quote!(#table::#column);
        let value = quote!(::core::clone::Clone::clone(&self.#fident));
        let (t, e) = if field.is_option() {
            (
                quote! {
                    #d::dsl::Or<
                        #d::dsl::Eq<#col, #fty>,
                        #d::dsl::And<
                            #d::dsl::IsNull<#col>,
                            #d::dsl::IsNull<#d::dsl::AsExprOf<#fty, #d::dsl::SqlTypeOf<#col>>>,
                        >,
                    >
                },
                quote! {
                    #d::BoolExpressionMethods::or(
                        #d::ExpressionMethods::eq(#col, #value),
                        #d::BoolExpressionMethods::and(
                            #d::ExpressionMethods::is_null(#col),
                            #d::ExpressionMethods::is_null(
                                #d::IntoSql::into_sql::<#d::dsl::SqlTypeOf<#col>>(#value),
                            ),
                        ),
                    )
                },
            )
        } else {
            (
                quote!(#d::dsl::Eq<#col, #fty>),
                quote!(#d::ExpressionMethods::eq(#col, #value)),
            )
        };
        (ty, expr) = match (ty, expr) {
            (Some(ty), Some(expr)) => (
                Some(quote!(#d::dsl::And<#ty, #t>)),
                Some(quote!(#d::BoolExpressionMethods::and(#expr, #e))),
            ),
            _ => (Some(t), Some(e)),
        };
    }
    let doc = format!(
        " This condition as a Diesel filter on `{}`: `{}.filter(condition.filter())`; \
         pass the condition to `.scoped(..)` of a cached query to get both the filter and the \
         dependency.",
        quote!(#table).to_string().replace(' ', ""),
        quote!(#table::table).to_string().replace(' ', "")
    );
    quote! {
        #path::__private::diesel_scope_filter! {
            #[automatically_derived]
            impl #d::ScopeFilter for #name {
                type Table = #table::table;
                type Filter = #ty;

                fn filter(&self) -> Self::Filter {
                    #expr
                }
            }

            #[automatically_derived]
            impl #name {
                #[doc = #doc]
                pub fn filter(&self) -> #ty {
                    #d::ScopeFilter::filter(self)
                }
            }
        }
    }
}

/// Stub impls for input with errors: the user sees the errors, not their consequences.
fn fallback(input: &DeriveInput, cont: Option<&Container<'_>>) -> TokenStream {
    let default_path: syn::Path = syn::parse_quote!(::matroska);
    let path = cont.map_or(&default_path, |c| &c.crate_path);
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let scoped = input.generics.params.is_empty().then(|| {
        quote! {
            #[automatically_derived]
            impl #path::Scoped for #ident {
                fn scope() -> &'static #path::Scope<Self> {
                    ::core::unreachable!()
                }
            }
        }
    });
    // Condition types of the scopes that did resolve, so code naming them still checks.
    let (conditions, condition_impls) = match cont {
        Some(cont) => (
            cont.scopes
                .iter()
                .map(|s| condition_type(cont, s))
                .collect(),
            cont.scopes
                .iter()
                .map(|s| impl_condition(cont, s))
                .collect(),
        ),
        None => (Vec::new(), Vec::new()),
    };
    quote! {
        #(#conditions)*

        #[doc(hidden)]
        const _: () = {
            #[automatically_derived]
            impl #impl_generics #path::CacheDeps for #ident #ty_generics #where_clause {
                fn entity_name() -> &'static str {
                    ::core::unreachable!()
                }

                fn primary_key(&self) -> #path::Dependency {
                    ::core::unreachable!()
                }
            }

            #[automatically_derived]
            impl #impl_generics #path::CollectDeps for #ident #ty_generics #where_clause {
                fn collect_deps(&self, _: &mut #path::DependencySet) {
                    ::core::unreachable!()
                }
            }

            #scoped
            #(#condition_impls)*
        };
    }
}

/// `ToValue::to_value(&<receiver>.<field>)`, spanned at the field's type: a type without
/// `ToValue` is reported there, not at the derive. (Respanning keeps the receiver resolving:
/// user spans and the call site share hygiene.)
fn to_value(path: &syn::Path, field: &Field<'_>, receiver: TokenStream) -> TokenStream {
    let name = field.ident;
    respan(
        quote!(#path::ToValue::to_value(&#receiver.#name)),
        field.ty.span(),
    )
}

/// The column names of a scope's `watch = [..]`: a field's column name (SeaORM's, on a model),
/// or the string as written.
fn watch_names(
    cont: &Container<'_>,
    watch: &[crate::internals::attr::WatchItem],
) -> Vec<TokenStream> {
    use crate::internals::attr::WatchItem;
    watch
        .iter()
        .filter_map(|item| match item {
            WatchItem::Field(ident) => cont
                .fields
                .iter()
                .find(|f| f.ident == ident)
                .map(|f| field_name(cont, f)),
            WatchItem::Column(lit) => Some(quote!(#lit)),
        })
        .collect()
}

/// The scope fields with a `#[cache(fold = "...")]`: their condition names and fold constants.
fn folds<'a>(cont: &'a Container<'_>) -> impl Iterator<Item = (TokenStream, &'a Ident)> + 'a {
    let mut scoped: Vec<usize> = cont
        .scopes
        .iter()
        .flat_map(|s| s.fields.iter().copied())
        .collect();
    scoped.sort_unstable();
    scoped.dedup();
    scoped.into_iter().filter_map(move |i| {
        let field = &cont.fields[i];
        field
            .attrs
            .fold
            .as_ref()
            .map(|fold| (field_name(cont, field), fold))
    })
}

/// `tokens` with every span set to `span`, so errors about them point at the user's tokens.
fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|mut tt| {
            if let proc_macro2::TokenTree::Group(g) = &tt {
                let mut group = proc_macro2::Group::new(g.delimiter(), respan(g.stream(), span));
                group.set_span(span);
                tt = proc_macro2::TokenTree::Group(group);
            } else {
                tt.set_span(span);
            }
            tt
        })
        .collect()
}

/// A scope field's name in conditions: the field's name; on a SeaORM model its column's
/// name as SeaORM reports it (`Column::as_str()`), so the names of modified columns an
/// `ActiveModel` reports can be handed to `Scope::invalidate_for` as they are; on a Diesel
/// model its `table!` column.
fn field_name(cont: &Container<'_>, field: &Field<'_>) -> TokenStream {
    if cont.is_diesel_model() {
        // A Diesel model's conditions name columns, as the outbox's triggers record them.
        let name = crate::internals::ast::unraw(&field.diesel_column());
        return quote!(#name);
    }
    if cont.is_sea_orm_model() && !field.attrs.sea_orm_ignore {
        let path = &cont.crate_path;
        let column = field.column_variant();
        quote!(#path::__private::sea_orm::IdenStatic::as_str(&Column::#column))
    } else {
        let name = field.name();
        quote!(#name)
    }
}

/// "`a`", "`a` and `b`", "`a`, `b` and `c`".
fn english_list(items: impl Iterator<Item = String>) -> String {
    let items: Vec<String> = items.collect();
    match items.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}
